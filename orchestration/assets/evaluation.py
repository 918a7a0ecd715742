"""Group `evaluation`: metrics over the whole anonymized set and the report."""
