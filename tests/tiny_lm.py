"""Tiny randomly initialised Llamas on the real SmolLM2 tokenizer: fast stand-ins for trainer tests."""

import torch


def tiny_llama(tok, layers=4, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


PAIRS = [{"instruction": f"Count to {n}.", "response": " ".join(str(i) for i in range(1, n + 1))} for n in range(2, 10)]
