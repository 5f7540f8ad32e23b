"""Teacher path generation (paper section 2.2): prompt a black-box teacher in six reasoning styles."""
