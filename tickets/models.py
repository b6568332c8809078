# Diagnostic tickets (CONTRACT §5) arrive with their own issue.
