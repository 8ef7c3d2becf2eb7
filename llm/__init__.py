"""Hugging Face decoder-model pipeline of slabopt, installed as ``slabopt.llm``."""
