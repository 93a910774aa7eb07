"""Model families, one file each: ``gpt`` (decoder-only), ``bert`` (encoder), ``bart`` and ``t5``
(encoder-decoder)."""

from minillm.models.bart import BART, BARTConfig
from minillm.models.bert import BERT, BERTConfig, BERTForSequenceClassification
from minillm.models.gpt import GPT, GPTConfig
from minillm.models.t5 import T5, T5Config

__all__ = ["BART", "BARTConfig", "BERT", "BERTConfig", "BERTForSequenceClassification", "GPT", "GPTConfig",
           "T5", "T5Config"]
