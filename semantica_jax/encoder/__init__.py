"""The frozen image encoder: its checkpoint bundle, training and objectives, batched
encoding, the embedding cache and its evaluation."""
