{{/*
Names, labels and the RBAC rules, shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "roomshard-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, or "<release>-<chart>" (just "<release>"
when the release name already contains the chart name). 63 characters at most (DNS label).
*/}}
{{- define "roomshard-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "roomshard-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource the chart creates. */}}
{{- define "roomshard-operator.labels" -}}
helm.sh/chart: {{ include "roomshard-operator.chart" . }}
{{ include "roomshard-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: roomshard
{{- end }}

{{/* Labels that select the operator pods (Deployment, Service, PDB, NetworkPolicy). */}}
{{- define "roomshard-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "roomshard-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "roomshard-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "roomshard-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The leader-election Lease name. */}}
{{- define "roomshard-operator.leaseName" -}}
{{- default (include "roomshard-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The operator image reference: by digest when image.digest is set, else by tag. */}}
{{- define "roomshard-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The namespaces the node pods run in, as a JSON list (use with fromJsonArray):
networkPolicy.namespaces, else watchNamespace, else the release namespace. With watchNamespace
set, node pods can only be in that namespace, so anything else is refused here rather than left
half-working.
*/}}
{{- define "roomshard-operator.nodeNamespaces" -}}
{{- $namespaces := .Values.networkPolicy.namespaces }}
{{- if not $namespaces }}
{{- $namespaces = list (default .Release.Namespace .Values.watchNamespace) }}
{{- end }}
{{- if .Values.watchNamespace }}
{{- range $namespaces }}
{{- if ne . $.Values.watchNamespace }}
{{- fail (printf "networkPolicy.namespaces: %q is not watchNamespace %q; the operator only creates node pods in the namespace it watches" . $.Values.watchNamespace) }}
{{- end }}
{{- end }}
{{- end }}
{{- $namespaces | uniq | toJson }}
{{- end }}

{{/*
What the operator does in the namespaces it watches, and nothing more. tests/deploy/test_rbac.py
compares these rules, grant by grant, with the API calls the operator's code makes
(`roomshard-operator rbac`): a verb added on one side only fails CI.
- ChatClusters: list and watch them (the controller's cache); write their status by server-side
  apply; update their finalizers subresource, which setting an owner reference with
  blockOwnerDeletion needs where the OwnerReferencesPermissionEnforcement admission plugin is on.
- Children, written by server-side apply: `patch`, and `create` too, because an apply that
  creates the object is authorized as a create (Kubernetes docs: Server-Side Apply, RBAC): the
  StatefulSet, the Services, the PodDisruptionBudget, the Ingress (read and deleted when it is
  turned off), the assignment ConfigMap, and the nodes' ServiceAccount, Role and RoleBinding.
  The StatefulSet and the ConfigMap are also read and watched. The status subresource is only
  ever patched (the ChatCluster exists). With `spec.autoscaling`, the operator patches the
  scale subresource (`spec.replicas`), as `kubectl scale` would.
- The nodes' Role lets them get, list and watch their ConfigMap. Kubernetes lets the operator
  create it only because the operator holds those verbs itself (no `escalate`, no `bind`).
- Secrets: get and create only (the peer-link key, generated once and kept); no list or watch,
  which would let the operator read every Secret of the namespace.
- Pods: membership is the pods' readiness: list and watch; delete, for the rolling update the
  operator drives (OnDelete StatefulSet): one outdated pod at a time, each drained first.
- Events, on transitions: created, and patched when the same event repeats.
*/}}
{{- define "roomshard-operator.watchedRules" -}}
- apiGroups: ["roomshard.dev"]
  resources: ["chatclusters"]
  verbs: ["list", "watch"]
- apiGroups: ["roomshard.dev"]
  resources: ["chatclusters/status", "chatclusters/scale"]
  verbs: ["patch"]
- apiGroups: ["roomshard.dev"]
  resources: ["chatclusters/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "serviceaccounts"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* What the operator does in its own namespace: leader election with a Lease. */}}
{{- define "roomshard-operator.leaseRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}
