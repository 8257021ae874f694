import sys

from codellama_recipe.stages.ablate.cli import main

sys.exit(main())
