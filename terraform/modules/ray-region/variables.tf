variable "cluster_name" {
  description = "Name of the Isthmus cluster; prefixes every resource name and sets the isthmus:cluster tag."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,23}$", var.cluster_name))
    error_message = "cluster_name must be 1-24 characters of a-z, 0-9 and '-', starting with a letter. To fix: e.g. \"isthmus-demo\"."
  }
}

variable "site" {
  description = "Isthmus site name of this region (a Spec `regions[].name`, e.g. \"us-east\"). Workers here get the Ray resource `region:<site>`."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,23}$", var.site))
    error_message = "site must be 1-24 characters of a-z, 0-9 and '-', starting with a letter. To fix: use the Spec's region name, e.g. \"us-east\"."
  }
}

variable "role" {
  description = "\"head\": this region also runs the Ray head node (GCS, Serve controller, control plane) at head_address. \"worker\": workers only, joining the head at head_address."
  type        = string
  default     = "worker"

  validation {
    condition     = contains(["head", "worker"], var.role)
    error_message = "role must be \"head\" or \"worker\". To fix: exactly one region of a cluster is \"head\"."
  }
}

variable "head_address" {
  description = "Private IPv4 address of the Ray head node. For role \"head\" it is assigned to the head instance and must lie in this region's first subnet, cidrsubnet(cidr_block, 4, 0); for \"worker\" it is the address workers join (reachable over VPC peering)."
  type        = string

  validation {
    condition     = can(cidrhost("${var.head_address}/32", 0))
    error_message = "head_address must be an IPv4 address such as \"10.10.0.10\". To fix: use cidrhost(cidrsubnet(<head region cidr_block>, 4, 0), 10)."
  }
}

variable "cidr_block" {
  description = "IPv4 CIDR of this region's VPC (/16 to /24). Must not overlap any other region of the cluster: VPC peering routes between them."
  type        = string

  validation {
    condition     = can(cidrhost(var.cidr_block, 0)) && try(tonumber(split("/", var.cidr_block)[1]) >= 16 && tonumber(split("/", var.cidr_block)[1]) <= 24, false)
    error_message = "cidr_block must be an IPv4 CIDR with a prefix length between /16 and /24. To fix: e.g. \"10.10.0.0/16\"."
  }
}

variable "cluster_cidrs" {
  description = "CIDRs of every region of the cluster (this one included or not). Ray, Serve and control-plane ports are open to these CIDRs and nothing else, unless client_cidrs adds more."
  type        = list(string)

  validation {
    condition     = alltrue([for c in var.cluster_cidrs : can(cidrhost(c, 0))])
    error_message = "cluster_cidrs must be IPv4 CIDRs. To fix: list the cidr_block of each region, e.g. [\"10.10.0.0/16\", \"10.20.0.0/16\"]."
  }
}

variable "client_cidrs" {
  description = "Extra CIDRs (edge networks, load balancers) allowed to reach the Serve HTTP/gRPC ingress and the control plane. Empty: reachable from the cluster only."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.client_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "client_cidrs must be IPv4 CIDRs other than 0.0.0.0/0. To fix: list your edge networks' public CIDRs, e.g. [\"203.0.113.0/24\"]."
  }
}

variable "instance_counts" {
  description = "Worker instances per EC2 instance type in this region, e.g. {\"g4dn.xlarge\" = 2}; one launch template and autoscaling group (min = max = desired = count) per type. Made by `isthmus fleet tfvars` from a Plan."
  type        = map(number)
  default     = {}

  validation {
    condition     = alltrue([for n in values(var.instance_counts) : n >= 0 && n <= 1000 && floor(n) == n])
    error_message = "instance_counts values must be whole numbers between 0 and 1000. To fix: give the plan's instance count per type."
  }

  validation {
    condition     = alltrue([for t in keys(var.instance_counts) : can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", t))])
    error_message = "instance_counts keys must be EC2 instance type names such as \"g4dn.xlarge\". To fix: use the provider's instance type names."
  }
}

variable "head_instance_type" {
  description = "EC2 instance type of the Ray head node (role \"head\" only). The head runs no models, only Ray's GCS, the Serve controller and the Isthmus control plane."
  type        = string
  default     = "m5.large"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.head_instance_type))
    error_message = "head_instance_type must be an EC2 instance type name such as \"m5.large\"."
  }
}

variable "ami_id" {
  description = "AMI for every node of this region. null: the AMI named by the SSM parameter ami_ssm_parameter."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must look like \"ami-0123456789abcdef0\" or be null. To fix: copy the AMI ID of this region, or leave it null."
  }
}

variable "ami_ssm_parameter" {
  description = "Public SSM parameter holding the AMI ID to use when ami_id is null. For GPU types use a driver-ready AMI, e.g. \"/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id\"."
  type        = string
  default     = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"

  validation {
    condition     = startswith(var.ami_ssm_parameter, "/")
    error_message = "ami_ssm_parameter must be an SSM parameter path starting with \"/\"."
  }
}

variable "isthmus_package" {
  description = "pip requirement that installs Isthmus on the nodes, e.g. \"isthmus==0.1.0\", a wheel URL or \"git+https://…\"."
  type        = string
  default     = "isthmus"

  validation {
    condition     = length(trimspace(var.isthmus_package)) > 0 && !can(regex("['\\n]", var.isthmus_package))
    error_message = "isthmus_package must be a non-empty pip requirement without quotes or newlines."
  }
}

variable "root_volume_gb" {
  description = "Root EBS volume size of every node, in GB (Python, torch and model weights live there)."
  type        = number
  default     = 100

  validation {
    condition     = var.root_volume_gb >= 20 && var.root_volume_gb <= 16384
    error_message = "root_volume_gb must be between 20 and 16384. To fix: 100 fits torch, Triton and a few models."
  }
}

variable "ports" {
  description = "TCP ports: ray_gcs (Ray head), serve_http and serve_grpc (Serve ingress), control_plane (Isthmus gRPC control plane). Ray's own internal ports are fixed by the user data: ray_gcs+1..ray_gcs+5 and 10002-10999."
  type = object({
    ray_gcs       = optional(number, 6379)
    ray_dashboard = optional(number, 8265)
    serve_http    = optional(number, 8000)
    serve_grpc    = optional(number, 9000)
    control_plane = optional(number, 50051)
  })
  default = {}

  validation {
    condition     = alltrue([for p in values(var.ports) : p >= 1024 && p <= 65535 && (p < 10002 || p > 10999)])
    error_message = "ports must lie in 1024-65535 and outside Ray's worker range 10002-10999. To fix: pick other ports."
  }
}

variable "tags" {
  description = "Extra tags for every resource (merged under the isthmus:* tags)."
  type        = map(string)
  default     = {}
}
