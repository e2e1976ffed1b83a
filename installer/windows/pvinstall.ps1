#Requires -Version 5.1
#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Install, uninstall or clean up a pvdrivers Windows driver package (pnputil).

.DESCRIPTION
    Install   pnputil /add-driver <inf> /install, then removes our older
              packages of the same INF (Cleanup against the INF's version).
    Uninstall pnputil /delete-driver oemNN.inf /uninstall for every package
              of ours with this INF's name.
    Cleanup   removes our packages of this INF's name older than the newest
              one in the driver store. Mixed versions of one driver in the
              store are a classic cause of boot failures.

    "Ours" means: pnputil /enum-drivers lists it with Provider Name equal to
    -Provider ("pvdrivers", the INF's Provider) and Original Name equal to
    the INF's file name. Versions are compared on the DriverVer version
    (w.x.y.z); two packages with the same version are both kept.

    -WhatIf shows what would be added and deleted and changes nothing.

    NOT RUN: this script was written on Linux and has never been executed,
    or even parsed, by PowerShell (see docs/WINDOWS.md). pnputil's
    /enum-drivers labels are localised; the script reads the English ones
    and stops with an error rather than guess on other languages.

.EXAMPLE
    .\pvinstall.ps1 -Inf .\pvballoon\pvballoon.inf -WhatIf
.EXAMPLE
    .\pvinstall.ps1 -Inf .\pvballoon\pvballoon.inf
.EXAMPLE
    .\pvinstall.ps1 -Inf pvballoon.inf -Mode Uninstall
#>
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    # The package's INF (for Uninstall and Cleanup only its file name is used).
    [Parameter(Mandatory = $true)][string]$Inf,
    [ValidateSet('Install', 'Uninstall', 'Cleanup')][string]$Mode = 'Install',
    [string]$Provider = 'pvdrivers'
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

# Run pnputil; 0 is success, 3010 is success with a reboot needed.
function Invoke-PnpUtil([string[]]$Arguments) {
    $out = & pnputil.exe @Arguments 2>&1 | Out-String
    $code = $LASTEXITCODE
    Write-Verbose "pnputil $($Arguments -join ' ') -> $code`n$out"
    if ($code -eq 3010) { Write-Warning 'Windows needs a reboot to finish.' }
    elseif ($code -ne 0) { throw "pnputil $($Arguments -join ' ') failed ($code):`n$out" }
}

# Our packages in the driver store with this original INF name.
function Get-OurPackages([string]$OriginalName) {
    $text = & pnputil.exe /enum-drivers | Out-String
    if ($LASTEXITCODE -ne 0) { throw "pnputil /enum-drivers failed ($LASTEXITCODE)" }
    $found = 0
    $ours = @()
    foreach ($block in ($text -split '\r?\n\s*\r?\n')) {
        $f = @{}
        foreach ($line in ($block -split '\r?\n')) {
            if ($line -match '^\s*([^:]+?)\s*:\s*(.*?)\s*$') { $f[$Matches[1].ToLowerInvariant()] = $Matches[2] }
        }
        if (-not $f.ContainsKey('published name')) { continue }
        $found++
        if ($f['original name'] -ine $OriginalName -or $f['provider name'] -ine $Provider) { continue }
        # "Driver Version: <date> <w.x.y.z>"; the date's format is the locale's.
        $ver = ($f['driver version'] -split '\s+')[-1]
        $ours += [pscustomobject]@{ Published = $f['published name']; Version = [version]$ver }
    }
    # Published names are oemNN.inf in every language: if there are some
    # and no English label was read, the output is not one we understand.
    if ($found -eq 0 -and $text -match 'oem\d+\.inf') {
        throw 'pnputil /enum-drivers output not recognised (English labels expected: Published Name, Original Name, Provider Name, Driver Version).'
    }
    $ours
}

# The version in the INF's DriverVer (mm/dd/yyyy,w.x.y.z).
function Get-InfVersion([string]$Path) {
    $line = Select-String -Path $Path -Pattern '^\s*DriverVer\s*=\s*[\d/]+\s*,\s*([\d.]+)' | Select-Object -First 1
    if (-not $line) { throw "$Path has no stamped DriverVer (mm/dd/yyyy,w.x.y.z)" }
    [version]$line.Matches[0].Groups[1].Value
}

function Remove-Package {
    [CmdletBinding(SupportsShouldProcess = $true)]
    param($Package, [string]$Why)
    if ($PSCmdlet.ShouldProcess("$($Package.Published) ($Provider $($Package.Version))", "pnputil /delete-driver /uninstall: $Why")) {
        Invoke-PnpUtil @('/delete-driver', $Package.Published, '/uninstall')
    }
}

$name = Split-Path -Leaf $Inf
switch ($Mode) {
    'Install' {
        $path = (Resolve-Path -LiteralPath $Inf).Path
        $new = Get-InfVersion $path
        if ($PSCmdlet.ShouldProcess("$name $new", 'pnputil /add-driver /install')) {
            Invoke-PnpUtil @('/add-driver', $path, '/install')
        }
        Get-OurPackages $name | Where-Object { $_.Version -lt $new } |
            ForEach-Object { Remove-Package $_ "older than $new" }
    }
    'Uninstall' {
        $ours = @(Get-OurPackages $name)
        if ($ours.Count -eq 0) { Write-Output "No $Provider package named $name in the driver store." }
        $ours | ForEach-Object { Remove-Package $_ 'uninstall' }
    }
    'Cleanup' {
        $ours = @(Get-OurPackages $name)
        if ($ours.Count -eq 0) { Write-Output "No $Provider package named $name in the driver store."; break }
        $newest = ($ours | Sort-Object -Property Version -Descending | Select-Object -First 1).Version
        $ours | Where-Object { $_.Version -lt $newest } |
            ForEach-Object { Remove-Package $_ "older than $newest" }
    }
}
