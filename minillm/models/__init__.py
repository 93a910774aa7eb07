"""Model families, one file each: ``gpt`` (GPT-2 decoder), ``llama`` (today's decoder), ``bert``
(encoder), ``bart`` and ``t5`` (encoder-decoder). What they share: ``common`` (id check, init, padding
mask, checkpoints) and, for BART and T5, ``seq2seq`` (forward, KV-cached decoder, greedy generation)."""

from minillm.models.bart import BART, BARTConfig
from minillm.models.bert import BERT, BERTConfig, BERTForSequenceClassification
from minillm.models.gpt import GPT, GPTConfig
from minillm.models.llama import Llama, LlamaConfig
from minillm.models.t5 import T5, T5Config

__all__ = ["BART", "BARTConfig", "BERT", "BERTConfig", "BERTForSequenceClassification", "GPT", "GPTConfig",
           "Llama", "LlamaConfig", "T5", "T5Config"]
