"""Path embeddings (paper eq. 1): the router's frozen encoder applied once to every path."""
