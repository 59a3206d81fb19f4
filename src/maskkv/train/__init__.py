"""Training of the small LLaDA-architecture model shipped with maskkv (``maskkv train-tiny``)."""
