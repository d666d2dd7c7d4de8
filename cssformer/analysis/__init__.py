"""Model analysis: FLOPs and parameter reports (fvcore, imported only when a report is made)."""
