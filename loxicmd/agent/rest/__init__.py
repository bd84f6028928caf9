"""The REST API (LoxiLB's paths and bodies): the application, its errors and OpenAPI
document (``app``), and the configuration routes (``config``)."""
