"""Stage 2: adaptation heads trained on cached features (never imports avda.extract)."""
