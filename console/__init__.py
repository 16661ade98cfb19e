"""The operators' web console (`simctl console`): server-rendered pages over the store's reads,
and the audited actions an operator reaches for. Needs the `console` extra."""
