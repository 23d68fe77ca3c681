"""The client's screens: first run (setup.py), the chat (chat.py, its widgets in
widgets.py) and, for admin keys, the settings (settings.py); what several of them use is
in common.py. They are handed the Gateway and the Store they work with and never import
the App (app.py), which builds them: the dependency goes one way."""
