"""results.json rows, comparison tables (md/csv), the report CLI and the sweep callback."""
