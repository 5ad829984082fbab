"""What the public datasets share: previews, verification, the checkpoint
callback and what an export loads as."""
