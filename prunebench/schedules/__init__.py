"""When masks change: each schedule drives a Session (prune, fine-tune, record)."""
