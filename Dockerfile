# The image of the gateway (`api`) and the worker. vLLM runs from its own image.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TALKTUAH_VAR_DIR=/var/lib/talktuah

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY manage.py ./
COPY talktuah_site ./talktuah_site
COPY proxy ./proxy
COPY modelmgr ./modelmgr
# Installed for its management commands (the simulator, the demo); the product never
# imports it.
COPY devtools ./devtools
COPY templates ./templates
# The admin's CSS and JS, served by the gateway itself (see talktuah_site/urls.py).
RUN DEBUG=true python manage.py collectstatic --no-input -v 0 && mkdir -p /var/lib/talktuah

EXPOSE 8000
CMD ["python", "manage.py", "serve", "--host", "0.0.0.0", "--port", "8000"]
