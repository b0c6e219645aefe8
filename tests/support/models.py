from django.db import models


class Effect(models.Model):
    """A side effect a test workflow performed. Deliberately without a unique constraint:
    tests count these rows to prove each effect happened exactly once."""

    run_id = models.UUIDField(db_index=True)
    name = models.CharField(max_length=100)
    key = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} of {self.run_id}"
