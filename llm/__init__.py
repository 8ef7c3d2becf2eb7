"""Llama-family adapter for slabopt, installed as ``slabopt.llm``."""
