"""LoRA fine-tuning of the specialist: task datasets (`datasets`) and the training run (`train`)."""
