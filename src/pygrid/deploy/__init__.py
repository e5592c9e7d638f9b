"""Cloud deployment: render a root module from templates/, run Terraform, record the result.

``pygrid deploy`` / ``destroy`` / ``status`` are thin commands over this package.
"""
