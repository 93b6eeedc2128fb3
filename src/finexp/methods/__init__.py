"""How a model learns from the labelled rows (``conf/method``), beyond plain supervised fine-tuning.

``method=finetune`` is finexp's ordinary loop and needs nothing here. :mod:`.setfit` is the SetFit recipe for few
labelled rows: contrastive sentence-pair tuning of the encoder, then the head, both inside Lightning.
"""
