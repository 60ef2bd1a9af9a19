"""`python -m retinaunet_deploy.cli ...`: the same CLI as the `retinaunet-deploy` script."""

from retinaunet_deploy.cli import main

main()
