"""The Backend model moved here from modelmgr with its table (modelmgr_backend) kept:
only Django's idea of which app owns it changes, and the admin's permissions on it
follow (its content type is renamed, so groups keep what they were given)."""

from django.db import migrations, models

import backends.models


def take_content_type(apps, schema_editor):
    content_types = apps.get_model("contenttypes", "ContentType")
    if not content_types.objects.filter(app_label="backends", model="backend").exists():
        content_types.objects.filter(app_label="modelmgr", model="backend").update(
            app_label="backends"
        )


def give_content_type_back(apps, schema_editor):
    content_types = apps.get_model("contenttypes", "ContentType")
    if not content_types.objects.filter(app_label="modelmgr", model="backend").exists():
        content_types.objects.filter(app_label="backends", model="backend").update(
            app_label="modelmgr"
        )


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("modelmgr", "0005_kubernetes_engine"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Backend",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "name",
                            models.SlugField(
                                help_text="Used in ?backend=, metrics and logs.", unique=True
                            ),
                        ),
                        (
                            "base_url",
                            models.CharField(
                                help_text="vLLM's address, without /v1, e.g. http://gpu-2:8000",
                                max_length=300,
                                validators=[backends.models.validate_base_url],
                            ),
                        ),
                        (
                            "api_key_sealed",
                            models.TextField(
                                blank=True,
                                editable=False,
                                help_text="vLLM's --api-key, sealed under SECRET_KEY (never stored in plaintext).",
                            ),
                        ),
                        (
                            "engine",
                            models.CharField(
                                choices=[
                                    ("external", "external (TalkTuah does not start or stop it)"),
                                    ("process", "process (a vLLM process on the worker's host)"),
                                    ("docker", "docker (a vLLM container on the worker's host)"),
                                    ("kubernetes", "kubernetes (a Deployment, patched and rolled out)"),
                                ],
                                default="external",
                                help_text="What runs this vLLM, for switches driven by `run_worker --backend`.",
                                max_length=20,
                            ),
                        ),
                        (
                            "engine_settings",
                            models.JSONField(
                                blank=True,
                                default=dict,
                                help_text='Overrides of the engine settings for this backend, e.g. {"VLLM_PORT": 8002}.',
                            ),
                        ),
                        (
                            "weight",
                            models.PositiveSmallIntegerField(
                                default=1,
                                help_text="Share of the traffic among replicas of a model (relative).",
                            ),
                        ),
                        ("enabled", models.BooleanField(default=True)),
                        (
                            "draining",
                            models.BooleanField(
                                default=False, help_text="Takes no new requests; those in flight finish."
                            ),
                        ),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                    ],
                    options={"db_table": "modelmgr_backend", "ordering": ["name"]},
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(take_content_type, give_content_type_back),
    ]
