"""``python -m trmlab <verb> ...`` is ``trm <verb> ...``; it is what the launchers run for data parallel training:

    torchrun --nproc_per_node 2 -m trmlab train sudoku train.device=cpu
    accelerate launch --num_processes 2 -m trmlab train sudoku
"""

import sys

from trmlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
