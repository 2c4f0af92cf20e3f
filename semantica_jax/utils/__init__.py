"""Infrastructure that knows nothing of the model: atomic files, checkpoints (the only
Orbax importer), image files and the one pixel-range conversion, the device mesh."""
