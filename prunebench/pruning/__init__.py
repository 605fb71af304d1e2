"""Pruning mechanics every strategy and schedule shares: the Session a schedule drives, masks
held through training, removable units and compaction, MAC counting, memory sampling, and the
random same-density controls."""
