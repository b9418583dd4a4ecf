"""One APIRouter per resource: clients, tasks, models, updates, evaluations, health."""
