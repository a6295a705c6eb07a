from services.common.settings import load_settings
from services.ingest.main import run

run(load_settings())
