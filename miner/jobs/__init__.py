"""Jobs: the GPU scheduler and its worker processes, admission control, rounds of clips, organic jobs."""
