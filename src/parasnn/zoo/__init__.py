"""Pretrained and transformer models to convert (the trainable CNN zoo is :mod:`parasnn.models`)."""
from parasnn.zoo.bert import (MINILM_PACKAGE, BertConfig, BertEncoder, PretrainedModelError, load_bert_weights,
                              load_minilm, minilm_dir, sentence_encoder, tokenize)

__all__ = ["BertConfig", "BertEncoder", "PretrainedModelError", "MINILM_PACKAGE", "minilm_dir",
           "load_bert_weights", "load_minilm", "tokenize", "sentence_encoder"]
