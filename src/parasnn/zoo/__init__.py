"""Pretrained and transformer models to convert (the trainable CNN zoo is :mod:`parasnn.models`)."""
from parasnn.zoo.bert import (MINILM_PACKAGE, BertConfig, BertEncoder, PretrainedModelError, SelfAttention,
                              load_bert_weights, load_minilm, minilm_dir, sentence_encoder, tokenize)
from parasnn.zoo.vit import VisionTransformer, ViTBlock, vit_tiny

__all__ = ["BertConfig", "BertEncoder", "SelfAttention", "PretrainedModelError", "MINILM_PACKAGE", "minilm_dir",
           "load_bert_weights", "load_minilm", "tokenize", "sentence_encoder", "VisionTransformer", "ViTBlock", "vit_tiny"]
