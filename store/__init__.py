"""Data access: the only code that speaks SQL. Driver errors become StoreError subclasses here."""
