"""The composition roots: what builds the ports and hands them to the application.

- `serverless`: what the AWS and Azure runtimes compose alike (notices, the timer, approvals,
  advisories), over the ports each runtime builds (`bootstrap/aws.py`,
  `bootstrap/azure.py`: the bootstraps of Lambda and Functions)
- `clouds`: the real fleets a policy names, for the commands that read the clouds directly
"""
