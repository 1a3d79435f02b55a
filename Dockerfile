# MedXpert, CPU image: the REST API by default, the Streamlit app as an alternative.
#   docker build -t medxpert .
#   docker run -p 8000:8000 -e MEDXPERT_API_KEY=... \
#     -v "$PWD/models:/models" -v "$PWD/indexes:/indexes" -v "$PWD/data:/data:ro" medxpert
#   docker run -p 8501:8501 -v ... medxpert \
#     medxpert app --host 0.0.0.0 --port 8501 --trusted-network
# Models and case libraries are volumes (build them with ./dev.sh or `medxpert train` /
# `medxpert index build`); nothing is downloaded at run time.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MEDXPERT_MODELS_DIR=/models \
    MEDXPERT_INDEXES_DIR=/indexes \
    MEDXPERT_DATA_DIR=/data \
    MEDXPERT_RESULTS_DIR=/tmp/medxpert/results \
    MEDXPERT_CACHE_DIR=/tmp/medxpert/cache

WORKDIR /opt/medxpert
# the exact pins first (a layer that changes only with requirements.txt), then the package
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY pyproject.toml README.md ./
COPY medxpert ./medxpert
RUN pip install --no-deps . && pip check

RUN useradd --create-home --uid 10001 medxpert \
    && mkdir -p /models /indexes /data \
    && chown medxpert:medxpert /models /indexes
USER medxpert
WORKDIR /home/medxpert
VOLUME ["/models", "/indexes", "/data"]
EXPOSE 8000 8501

HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=8)"

# binding beyond loopback needs MEDXPERT_API_KEY (pass it with -e), or --no-api-key
CMD ["medxpert", "serve", "--host", "0.0.0.0", "--port", "8000"]
