"""The pure core: records, commands and the state machine. No trio, no IO, no clock."""
