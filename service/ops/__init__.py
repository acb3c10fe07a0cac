"""Operations: logging (and, later, metrics and health)."""
