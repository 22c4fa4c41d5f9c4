"""Pure data: the manifest model, its parsers (HCL, YAML) and validation. Imports nothing from tasksd."""
