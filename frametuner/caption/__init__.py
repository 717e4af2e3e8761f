"""Captioning: ``frametuner caption`` writes the caption files a LoRA trains on.

A vision-language model (Qwen2.5-VL through transformers; ``--model tiny`` for a random
one built locally) looks at frames sampled evenly from each clip (or at each image) and
writes a one-paragraph caption beside it (``clip.mp4`` -> ``clip.txt``, the dataset
reader's ``caption_strategy: textfile``), skipping what already has a caption.

Rooms: ``files`` (what to caption, atomic caption files), ``frames`` (which frames,
decoded with ``frametuner.data.media``), ``qwen_vl`` (the model, its processor and its
documented chat-template usage), ``tiny`` (the local test model), ``prompts`` (the
default instructions), ``run`` (batches, progress, report), ``review`` (the HTML page),
``command`` (CLI arguments). Kept light: importing this package imports no torch.
"""

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
QUANTISATIONS = ("none", "int8", "int4")
