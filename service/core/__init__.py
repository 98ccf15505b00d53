"""Pure, standard-library core shared by training and serving: arithmetic, errors, the card."""
