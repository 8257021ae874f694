# The Hydra configuration tree, shipped as package data (codellama_recipe.conf); YAML files only below.
