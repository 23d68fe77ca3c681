from django.apps import AppConfig


class ModelmgrConfig(AppConfig):
    name = "modelmgr"
    verbose_name = "Models and keys"
