"""Student training: the student model, its distillation heads and losses, data and the loop."""
