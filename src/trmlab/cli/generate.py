"""`trm generate <run|checkpoint> --prompt ...`: sample text from a trained LM (eval/generate.py does the work).

    trm generate runs/lm-tiny --prompt "A story about the sea." --max-new-tokens 100 --temperature 0.8 --top-k 50
"""

from __future__ import annotations

import json

import torch

from trmlab.cli.common import data_root, threads
from trmlab.errors import TrmError
from trmlab.eval.generate import check_sampling, find_tokenizer, generate_ids
from trmlab.train.device import peak_memory_kind, peak_memory_mb, pick_device, reset_peak_memory


def generate_arguments(p):
    p.add_argument("checkpoint", help="run directory (its latest checkpoint; <run>/best for the best one) "
                                      "or a checkpoint directory")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-sup", type=int, default=None, help="recursive LM: supervision steps per token "
                                                           "(default: model.n_sup_inference)")
    p.add_argument("--cache", default="exact", help="recursive LM's KV cache: exact (one per core call: equals "
                                                     "recomputation) | shared (one recursion's, the latest: "
                                                     "n_sup x T_recursion times smaller, approximate)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context for every token")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    threads(p, help="torch CPU threads (0 = torch default; 1 is faster "
                                                          "on a shared machine)")
    data_root(p, help="where the run's data was built (for runs without their "
                                                        "own tokenizer.json)")
    p.add_argument("--tokenizer", default="", help="a tokenizer.json (default: the run's copy, else its data's)")
    p.add_argument("--no-stop", action="store_true", help="keep going past <|endoftext|>")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def generate(args):
    from trmlab.api import load
    # bad settings are refused before the model is loaded
    check_sampling(args.temperature, args.top_k, args.top_p, args.n_sup, args.max_new_tokens, args.cache)
    if args.no_cache and args.cache != "exact":
        raise TrmError(f"--no-cache and --cache {args.cache} contradict each other: give one")
    if args.threads < 0:
        raise TrmError(f"--threads must be >= 0 (0 = torch's default), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device, "--device", auto_mps=True)
    model, cfg = load(args.checkpoint, use_ema=not args.no_ema, device=str(device))
    if cfg.task != "lm":
        raise TrmError(f"{args.checkpoint} is a '{cfg.task}' model; generate needs a language model (task lm)")
    tok = find_tokenizer(cfg, args.tokenizer, args.data_root, args.checkpoint)
    prompt = [tok.eot_id] + tok.encode(args.prompt)
    if len(prompt) + args.max_new_tokens > cfg.model.seq_len:
        raise TrmError(f"prompt ({len(prompt)} tokens) + --max-new-tokens {args.max_new_tokens} exceeds the "
                       f"model's context of {cfg.model.seq_len} tokens (model.seq_len)")
    recursive = cfg.model.arch != "gpt"
    if args.n_sup and not recursive:
        raise TrmError(f"--n-sup sets the recursive LM's supervision steps; {args.checkpoint} is a plain GPT")
    n_sup = (args.n_sup or cfg.model.n_sup_inference) if recursive else 1
    halt = recursive and cfg.model.halting == "act"
    reset_peak_memory(device)
    g = generate_ids(model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                     use_cache=not args.no_cache, n_sup=n_sup, halt=halt,
                     stop_id=None if args.no_stop else tok.eot_id, device=device, cache=args.cache)
    text = tok.decode(t for t in g.tokens if t != tok.eot_id)
    cached = not args.no_cache and not halt
    mem, mem_kind = peak_memory_mb(device), peak_memory_kind(device)
    result = {"text": args.prompt + text, "new_tokens": len(g.tokens), "prompt_tokens": g.prompt_tokens,
              "tokens_per_s": g.tokens_per_s, "prefill_s": g.prefill_s, "decode_s": g.decode_s,
              "cache": cached, "cache_kind": args.cache if cached else "none", "kv_cache_mb": g.cache_mb,
              "kv_cache_bytes": g.cache_bytes, "peak_memory_mb": mem,
              "memory_kind": mem_kind, "device": str(device), "arch": cfg.model.arch,
              "steps_per_token": sum(g.steps) / max(len(g.steps), 1), "n_sup_inference": n_sup}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(result["text"])
    print("---")
    how = (f"{args.cache} KV cache, {_size(g.cache_bytes)}" if cached else "no cache: context recomputed per token")
    steps = (f"; supervision steps per token {result['steps_per_token']:.2f} of {n_sup}"
             f"{' (ACT halting)' if halt else ''}" if recursive else "")
    print(f"{cfg.model.arch}: {len(g.tokens)} tokens in {g.prefill_s + g.decode_s:.2f} s = {g.tokens_per_s:.1f} "
          f"tokens/s on {device} ({how}); {mem_kind} {mem:.0f} MB{steps}")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KB"
