"""The processes: scheduler, arq worker and job functions, market ticker."""
