"""The Backend model now lives in the `backends` app (its table stays); the lifecycle
rows name their backend always (no silent `default`)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("modelmgr", "0005_kubernetes_engine"),
        ("backends", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="Backend")],
            database_operations=[],
        ),
        migrations.AlterField(
            model_name="downloadjob",
            name="backend",
            field=models.CharField(help_text="Whose host's Hugging Face cache.", max_length=50),
        ),
        migrations.AlterField(
            model_name="modelswitch",
            name="backend",
            field=models.CharField(max_length=50),
        ),
        migrations.AlterField(
            model_name="workerheartbeat",
            name="backend",
            field=models.CharField(help_text="The backend whose jobs it claims.", max_length=50),
        ),
    ]
