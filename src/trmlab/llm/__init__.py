"""LLM side of latent reasoning (seed 001, phases 2-3): problems, answer checking, the offline LLM, injection, GRPO.

    problems.py   reasoning problems with a thinking trace and a checkable answer: the offline synthetic task
                  (chained single-digit arithmetic) or any local/HF dataset with question/thinking/answer fields
    checker.py    the answer checker and its safe wrapper (a checker that raises is logged, the sample skipped)
    chat.py       how a problem becomes text for a chat model: prompt, <think> block, answer (SmolLM3 style)
    model.py      load any HF causal LM (or the project's tiny one); build SmolLM3 from its config without weights
    tiny.py       the offline LLM: a small Llama trained on the synthetic task on CPU, cached with save_pretrained
    inject.py     read and overwrite one decoder layer's hidden states; greedy/sampled answers with a latent injected
    grpo.py       phase 3: GRPO on answer correctness with TRL's GRPOTrainer (the glue TRL lacks: the latent hook)
"""
