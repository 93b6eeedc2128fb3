"""Reading tables and text, turning rows into text, splitting, tokenizing and batching."""
