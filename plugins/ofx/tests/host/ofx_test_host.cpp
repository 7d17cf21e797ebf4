// ofx_test_host: a headless OpenFX 1.4 host for testing pegan.ofx.bundle, built on the HostSupport
// library of the OpenFX SDK (vendored by the crates.io package openfx-sys 0.1.0).
//
// It loads bundles the way a compositor does: HostSupport scans OFX_PLUGIN_PATH (and /usr/OFX/Plugins)
// for NAME.ofx.bundle/Contents/Linux-x86-64/NAME.ofx, opens each binary with dlopen(RTLD_LOCAL),
// enumerates and describes its plug-ins, and unloads them with dlclose at exit.
//
//   ofx_test_host check-binary FILE
//       dlopen(RTLD_NOW | RTLD_LOCAL) the file and look up the two OpenFX entry points.
//   ofx_test_host list
//       print every plug-in found, described in each of its contexts.
//   ofx_test_host run --plugin ID --context CONTEXT [options] --render SPEC [--render SPEC ...]
//       create an instance, set parameters, then per SPEC run the clip preferences, region of
//       definition, begin-render, regions of interest, render and end-render actions.
//
// Options of run:
//   --param NAME=VALUE       set a parameter (integer, double, boolean, choice index or string)
//   --key NAME=T:V[,T:V...]  animate an integer or double parameter with keys of value V at time T.
//                            Integers hold a key's value until the next key (step keys), and doubles
//                            interpolate linearly between keys and hold the first and last values.
//   --source WxH             connect a Source clip whose region of definition is W x H pixels
//   --abort-after N          make the image effect suite's abort() return 1 from its N+1-th call
//   --v1-messages            offer only version 1 of the message suite
// SPEC is a comma-separated list of key=value: time (0), scale (1), depth (byte|float, default
// float), components (RGBA|RGB, default RGBA), rows (pos|neg: rowBytes sign, default pos), window
// (x1:y1:x2:y2 in pixels at the render scale; default the whole region of definition) and out (a file
// that receives the rendered window, top row first, after one text line "W H CHANNELS BYTES").
//
// Every action result is printed on stdout. The exit status is 0 when every action succeeded, 2 when
// the plug-in failed an action (a "FAIL" line names it) and 1 for a usage error or a missing
// plug-in. Messages that the plug-in posts are printed as "message TYPE: TEXT". Each render line ends
// with "abort-polls N", the number of calls to abort() so far in the run.

#include <dlfcn.h>

#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

// The HostSupport headers are not self-contained: this is the order of the SDK's hostDemo.
#include "ofxCore.h"
#include "ofxImageEffect.h"
#include "ofxMessage.h"
#include "ofxPixels.h"
#include "ofxhBinary.h"
#include "ofxhPropertySuite.h"
#include "ofxhClip.h"
#include "ofxhParam.h"
#include "ofxhMemory.h"
#include "ofxhImageEffect.h"
#include "ofxhPluginAPICache.h"
#include "ofxhPluginCache.h"
#include "ofxhHost.h"
#include "ofxhImageEffectAPI.h"

namespace {

namespace HS = OFX::Host;
namespace IE = OFX::Host::ImageEffect;

const unsigned char kSentinel = 0xA5;  // fills output buffers, to see which bytes a render wrote

struct UsageError : std::runtime_error {
    explicit UsageError(const std::string &message) : std::runtime_error(message) {}
};

std::vector<std::string> split(const std::string &text, char separator) {
    std::vector<std::string> parts;
    std::stringstream stream(text);
    std::string part;
    while (std::getline(stream, part, separator)) parts.push_back(part);
    return parts;
}

double toNumber(const std::string &text, const std::string &option) {
    char *end = nullptr;
    double value = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0') throw UsageError("invalid number '" + text + "' for " + option);
    return value;
}

// One render request from a --render SPEC.
struct RenderSpec {
    double time = 0, scale = 1;
    std::string depth = kOfxBitDepthFloat, components = kOfxImageComponentRGBA;
    bool negativeRows = false, fullWindow = true;
    OfxRectI window = {0, 0, 0, 0};
    std::string out;
};

RenderSpec parseRender(const std::string &spec) {
    RenderSpec render;
    for (const std::string &item : split(spec, ',')) {
        size_t equals = item.find('=');
        if (equals == std::string::npos) throw UsageError("render option '" + item + "' is not KEY=VALUE");
        std::string key = item.substr(0, equals), value = item.substr(equals + 1);
        if (key == "time") render.time = toNumber(value, key);
        else if (key == "scale") render.scale = toNumber(value, key);
        else if (key == "depth" && value == "byte") render.depth = kOfxBitDepthByte;
        else if (key == "depth" && value == "float") render.depth = kOfxBitDepthFloat;
        else if (key == "components" && value == "RGBA") render.components = kOfxImageComponentRGBA;
        else if (key == "components" && value == "RGB") render.components = kOfxImageComponentRGB;
        else if (key == "rows" && (value == "pos" || value == "neg")) render.negativeRows = value == "neg";
        else if (key == "out") render.out = value;
        else if (key == "window") {
            std::vector<std::string> v = split(value, ':');
            if (v.size() != 4) throw UsageError("window '" + value + "' is not x1:y1:x2:y2");
            render.window = {int(toNumber(v[0], key)), int(toNumber(v[1], key)), int(toNumber(v[2], key)),
                             int(toNumber(v[3], key))};
            render.fullWindow = false;
        } else throw UsageError("unknown render option '" + item + "'");
    }
    return render;
}

size_t bytesPerSample(const std::string &depth) {
    if (depth == kOfxBitDepthByte) return 1;
    if (depth == kOfxBitDepthShort) return 2;
    return 4;
}

size_t componentCount(const std::string &components) {
    if (components == kOfxImageComponentRGB) return 3;
    if (components == kOfxImageComponentAlpha) return 1;
    return 4;
}

// An image whose pixels live in a host buffer. With negative rows the buffer stores the top row first
// and the OpenFX data pointer addresses the bottom row, with a negative rowBytes.
class TestImage : public IE::Image {
  public:
    TestImage(IE::ClipInstance &clip, double scale, const OfxRectI &bounds, bool negativeRows)
        : IE::Image(clip), _bounds(bounds) {
        _pixelBytes = bytesPerSample(clip.getPixelDepth()) * componentCount(clip.getComponents());
        _stride = size_t(bounds.x2 - bounds.x1) * _pixelBytes;
        size_t rows = size_t(bounds.y2 - bounds.y1);
        _buffer.assign(_stride * rows, kSentinel);
        unsigned char *data = _buffer.data();
        long rowBytes = long(_stride);
        if (negativeRows && rows > 0) {
            data += _stride * (rows - 1);
            rowBytes = -rowBytes;
        }
        _data = data;
        _rowBytes = rowBytes;
        setDoubleProperty(kOfxImageEffectPropRenderScale, scale, 0);
        setDoubleProperty(kOfxImageEffectPropRenderScale, scale, 1);
        setPointerProperty(kOfxImagePropData, data);
        for (int i = 0; i < 4; ++i) {
            setIntProperty(kOfxImagePropBounds, (&bounds.x1)[i], i);
            setIntProperty(kOfxImagePropRegionOfDefinition, (&bounds.x1)[i], i);
        }
        setIntProperty(kOfxImagePropRowBytes, int(rowBytes));
        setStringProperty(kOfxImagePropField, kOfxImageFieldNone);
        setStringProperty(kOfxImagePropUniqueIdentifier, "pegan-test-image");
    }

    // Returns the bytes of pixel (x, y) in pixel coordinates.
    unsigned char *pixel(int x, int y) {
        return _data + long(y - _bounds.y1) * _rowBytes + long(x - _bounds.x1) * long(_pixelBytes);
    }

    size_t pixelBytes() const { return _pixelBytes; }
    const OfxRectI &bounds() const { return _bounds; }

    // Counts the pixels inside (or outside) the window that differ from the sentinel.
    size_t writtenPixels(const OfxRectI &window, bool inside) {
        size_t written = 0;
        for (int y = _bounds.y1; y < _bounds.y2; ++y) {
            for (int x = _bounds.x1; x < _bounds.x2; ++x) {
                bool inWindow = x >= window.x1 && x < window.x2 && y >= window.y1 && y < window.y2;
                if (inWindow != inside) continue;
                unsigned char *p = pixel(x, y);
                for (size_t i = 0; i < _pixelBytes; ++i) {
                    if (p[i] != kSentinel) {
                        ++written;
                        break;
                    }
                }
            }
        }
        return written;
    }

  private:
    std::vector<unsigned char> _buffer;
    OfxRectI _bounds;
    size_t _pixelBytes = 0, _stride = 0;
    unsigned char *_data = nullptr;
    long _rowBytes = 0;
};

class TestEffect;

class TestClip : public IE::ClipInstance {
  public:
    TestClip(TestEffect *effect, IE::ClipDescriptor *descriptor);
    ~TestClip() override {
        if (_output) _output->releaseReference();
    }

    const std::string &getUnmappedBitDepth() const override;
    const std::string &getUnmappedComponents() const override;
    const std::string &getPremult() const override {
        static const std::string premult(kOfxImageUnPreMultiplied);
        return premult;
    }
    double getAspectRatio() const override { return 1.0; }
    double getFrameRate() const override { return 25.0; }
    void getFrameRange(double &first, double &last) const override {
        first = 0;
        last = 100;
    }
    const std::string &getFieldOrder() const override {
        static const std::string none(kOfxImageFieldNone);
        return none;
    }
    bool getConnected() const override;
    double getUnmappedFrameRate() const override { return 25.0; }
    void getUnmappedFrameRange(double &first, double &last) const override { getFrameRange(first, last); }
    bool getContinuousSamples() const override { return false; }
    IE::Image *getImage(OfxTime time, const OfxRectD *optionalBounds) override;
#ifdef OFX_SUPPORTS_OPENGLRENDER
    IE::Texture *loadTexture(OfxTime, const char *, const OfxRectD *) override { return nullptr; }
#endif
    OfxRectD getRegionOfDefinition(OfxTime time) const override;

    // The output image of the last render, owned by the clip.
    TestImage *output() { return _output; }
    void dropOutput() {
        if (_output) _output->releaseReference();
        _output = nullptr;
    }
    int sourceFetches() const { return _sourceFetches; }

  private:
    TestEffect *_effect;
    TestImage *_output = nullptr;
    int _sourceFetches = 0;
};

// Parameters with a value, a default from the descriptor, and (for integers and doubles) keys.
class TestInteger : public HS::Param::IntegerInstance {
  public:
    TestInteger(HS::Param::Descriptor &descriptor, HS::Param::SetInstance *set)
        : IntegerInstance(descriptor, set), _value(getProperties().getIntProperty(kOfxParamPropDefault)) {}
    OfxStatus get(int &value) override {
        value = _value;
        return kOfxStatOK;
    }
    // With keys, the value of the last key at or before `time`, or of the first key before it.
    OfxStatus get(OfxTime time, int &value) override {
        if (_keys.empty()) return get(value);
        value = _keys.begin()->second;
        for (const auto &key : _keys) {
            if (key.first <= time) value = key.second;
        }
        return kOfxStatOK;
    }
    OfxStatus set(int value) override {
        _value = value;
        return kOfxStatOK;
    }
    OfxStatus set(OfxTime time, int value) override {
        _keys[time] = value;
        return kOfxStatOK;
    }
    OfxStatus getNumKeys(unsigned int &keys) const override {
        keys = unsigned(_keys.size());
        return kOfxStatOK;
    }

  private:
    int _value;
    std::map<double, int> _keys;
};

class TestDouble : public HS::Param::DoubleInstance {
  public:
    TestDouble(HS::Param::Descriptor &descriptor, HS::Param::SetInstance *set)
        : DoubleInstance(descriptor, set), _value(getProperties().getDoubleProperty(kOfxParamPropDefault)) {}
    OfxStatus get(double &value) override {
        value = _value;
        return kOfxStatOK;
    }
    // With keys, linear interpolation between the keys around `time`, or the nearest key's value
    // before the first and after the last key.
    OfxStatus get(OfxTime time, double &value) override {
        if (_keys.empty()) return get(value);
        auto after = _keys.lower_bound(time);
        if (after == _keys.end()) {
            value = std::prev(after)->second;
        } else if (after->first == time || after == _keys.begin()) {
            value = after->second;
        } else {
            auto before = std::prev(after);
            double fraction = (time - before->first) / (after->first - before->first);
            value = before->second + (after->second - before->second) * fraction;
        }
        return kOfxStatOK;
    }
    OfxStatus set(double value) override {
        _value = value;
        return kOfxStatOK;
    }
    OfxStatus set(OfxTime time, double value) override {
        _keys[time] = value;
        return kOfxStatOK;
    }
    OfxStatus getNumKeys(unsigned int &keys) const override {
        keys = unsigned(_keys.size());
        return kOfxStatOK;
    }
    OfxStatus derive(OfxTime, double &value) override {
        value = 0;
        return kOfxStatOK;
    }
    OfxStatus integrate(OfxTime t1, OfxTime t2, double &value) override {
        value = _value * (t2 - t1);
        return kOfxStatOK;
    }

  private:
    double _value;
    std::map<double, double> _keys;
};

class TestBoolean : public HS::Param::BooleanInstance {
  public:
    TestBoolean(HS::Param::Descriptor &descriptor, HS::Param::SetInstance *set)
        : BooleanInstance(descriptor, set), _value(getProperties().getIntProperty(kOfxParamPropDefault) != 0) {}
    OfxStatus get(bool &value) override {
        value = _value;
        return kOfxStatOK;
    }
    OfxStatus get(OfxTime, bool &value) override { return get(value); }
    OfxStatus set(bool value) override {
        _value = value;
        return kOfxStatOK;
    }
    OfxStatus set(OfxTime, bool value) override { return set(value); }

  private:
    bool _value;
};

class TestChoice : public HS::Param::ChoiceInstance {
  public:
    TestChoice(HS::Param::Descriptor &descriptor, HS::Param::SetInstance *set)
        : ChoiceInstance(descriptor, set), _value(getProperties().getIntProperty(kOfxParamPropDefault)) {}
    OfxStatus get(int &value) override {
        value = _value;
        return kOfxStatOK;
    }
    OfxStatus get(OfxTime, int &value) override { return get(value); }
    OfxStatus set(int value) override {
        _value = value;
        return kOfxStatOK;
    }
    OfxStatus set(OfxTime, int value) override { return set(value); }

  private:
    int _value;
};

class TestString : public HS::Param::StringInstance {
  public:
    TestString(HS::Param::Descriptor &descriptor, HS::Param::SetInstance *set)
        : StringInstance(descriptor, set), _value(getProperties().getStringProperty(kOfxParamPropDefault)) {}
    OfxStatus get(std::string &value) override {
        value = _value;
        return kOfxStatOK;
    }
    OfxStatus get(OfxTime, std::string &value) override { return get(value); }
    OfxStatus set(const char *value) override {
        _value = value ? value : "";
        return kOfxStatOK;
    }
    OfxStatus set(OfxTime, const char *value) override { return set(value); }

  private:
    std::string _value;
};

class TestEffect : public IE::Instance {
  public:
    TestEffect(IE::ImageEffectPlugin *plugin, IE::Descriptor &descriptor, const std::string &context)
        : IE::Instance(plugin, descriptor, context, false) {}

    RenderSpec render;          // the render in progress
    OfxRectD outputRod = {0, 0, 0, 0};
    OfxRectI outputBounds = {0, 0, 0, 0};
    bool sourceConnected = false;
    OfxRectD sourceRod = {0, 0, 0, 0};
    long abortAfter = -1;       // abort() returns 1 from call abortAfter + 1 on; -1: never
    long abortCalls = 0;        // calls to abort() so far

    const std::string &getDefaultOutputFielding() const override {
        static const std::string none(kOfxImageFieldNone);
        return none;
    }
    IE::ClipInstance *newClipInstance(IE::Instance *, IE::ClipDescriptor *descriptor, int) override {
        return new TestClip(this, descriptor);
    }
    OfxStatus vmessage(const char *type, const char *, const char *format, va_list args) override {
        char text[4096];
        vsnprintf(text, sizeof text, format, args);
        std::cout << "message " << type << ": " << text << std::endl;
        return std::strcmp(type, kOfxMessageQuestion) == 0 ? kOfxStatReplyYes : kOfxStatOK;
    }
    OfxStatus setPersistentMessage(const char *type, const char *id, const char *format, va_list args) override {
        std::cout << "persistent ";
        return vmessage(type, id, format, args);
    }
    OfxStatus clearPersistentMessage() override { return kOfxStatOK; }
    int abort() override {
        long call = abortCalls++;
        return abortAfter >= 0 && call >= abortAfter ? 1 : 0;
    }

    void getProjectSize(double &x, double &y) const override {
        x = 1920;
        y = 1080;
    }
    void getProjectOffset(double &x, double &y) const override { x = y = 0; }
    void getProjectExtent(double &x, double &y) const override { getProjectSize(x, y); }
    double getProjectPixelAspectRatio() const override { return 1.0; }
    double getEffectDuration() const override { return 100.0; }
    double getFrameRate() const override { return 25.0; }
    double getFrameRecursive() const override { return render.time; }
    void getRenderScaleRecursive(double &x, double &y) const override { x = y = render.scale; }

    HS::Param::Instance *newParam(const std::string &name, HS::Param::Descriptor &descriptor) override {
        const std::string &type = descriptor.getType();
        if (type == kOfxParamTypeInteger) return new TestInteger(descriptor, this);
        if (type == kOfxParamTypeDouble) return new TestDouble(descriptor, this);
        if (type == kOfxParamTypeBoolean) return new TestBoolean(descriptor, this);
        if (type == kOfxParamTypeChoice) return new TestChoice(descriptor, this);
        if (type == kOfxParamTypeString) return new TestString(descriptor, this);
        if (type == kOfxParamTypeGroup) return new HS::Param::GroupInstance(descriptor, this);
        if (type == kOfxParamTypePage) return new HS::Param::PageInstance(descriptor, this);
        std::cout << "FAIL: parameter " << name << " has type " << type << ", which this host lacks" << std::endl;
        return nullptr;
    }
    OfxStatus editBegin(const std::string &) override { return kOfxStatOK; }
    OfxStatus editEnd() override { return kOfxStatOK; }
    void progressStart(const std::string &, const std::string &) override {}
    void progressEnd() override {}
    bool progressUpdate(double) override { return true; }
    double timeLineGetTime() override { return render.time; }
    void timeLineGotoTime(double) override {}
    void timeLineGetBounds(double &first, double &last) override {
        first = 0;
        last = 100;
    }
};

TestClip::TestClip(TestEffect *effect, IE::ClipDescriptor *descriptor)
    : IE::ClipInstance(effect, *descriptor), _effect(effect) {}

const std::string &TestClip::getUnmappedBitDepth() const { return _effect->render.depth; }
const std::string &TestClip::getUnmappedComponents() const { return _effect->render.components; }
bool TestClip::getConnected() const { return isOutput() || _effect->sourceConnected; }

OfxRectD TestClip::getRegionOfDefinition(OfxTime) const {
    return isOutput() ? _effect->outputRod : _effect->sourceRod;
}

IE::Image *TestClip::getImage(OfxTime, const OfxRectD *) {
    const RenderSpec &render = _effect->render;
    if (isOutput()) {
        if (!_output) _output = new TestImage(*this, render.scale, _effect->outputBounds, render.negativeRows);
        _output->addReference();
        return _output;
    }
    if (!_effect->sourceConnected) return nullptr;
    ++_sourceFetches;
    const OfxRectD &rod = _effect->sourceRod;
    OfxRectI bounds = {int(std::floor(rod.x1 * render.scale)), int(std::floor(rod.y1 * render.scale)),
                       int(std::ceil(rod.x2 * render.scale)), int(std::ceil(rod.y2 * render.scale))};
    return new TestImage(*this, render.scale, bounds, render.negativeRows);
}

class TestHost : public IE::Host {
  public:
    bool v1Messages = false;

    TestHost() {
        _properties.setStringProperty(kOfxPropName, "org.pegan.OfxTestHost");
        _properties.setStringProperty(kOfxPropLabel, "pegan OpenFX test host");
        _properties.setIntProperty(kOfxPropAPIVersion, 1, 0);
        _properties.setIntProperty(kOfxPropAPIVersion, 4, 1);
        _properties.setIntProperty(kOfxPropVersion, 1, 0);
        _properties.setIntProperty(kOfxPropVersion, 0, 1);
        _properties.setStringProperty(kOfxPropVersionLabel, "1.0");
        _properties.setIntProperty(kOfxImageEffectHostPropIsBackground, 1);
        _properties.setIntProperty(kOfxImageEffectPropSupportsOverlays, 0);
        _properties.setIntProperty(kOfxImageEffectPropSupportsMultiResolution, 1);
        _properties.setIntProperty(kOfxImageEffectPropSupportsTiles, 1);
        _properties.setIntProperty(kOfxImageEffectPropTemporalClipAccess, 0);
        _properties.setStringProperty(kOfxImageEffectPropSupportedComponents, kOfxImageComponentRGBA, 0);
        _properties.setStringProperty(kOfxImageEffectPropSupportedComponents, kOfxImageComponentRGB, 1);
        _properties.setStringProperty(kOfxImageEffectPropSupportedComponents, kOfxImageComponentAlpha, 2);
        _properties.setStringProperty(kOfxImageEffectPropSupportedContexts, kOfxImageEffectContextGenerator, 0);
        _properties.setStringProperty(kOfxImageEffectPropSupportedContexts, kOfxImageEffectContextFilter, 1);
        _properties.setStringProperty(kOfxImageEffectPropSupportedContexts, kOfxImageEffectContextGeneral, 2);
        _properties.setIntProperty(kOfxImageEffectPropSupportsMultipleClipDepths, 0);
        _properties.setIntProperty(kOfxImageEffectPropSupportsMultipleClipPARs, 0);
        _properties.setIntProperty(kOfxImageEffectPropSetableFrameRate, 0);
        _properties.setIntProperty(kOfxImageEffectPropSetableFielding, 0);
        _properties.setIntProperty(kOfxParamHostPropSupportsCustomInteract, 0);
        _properties.setIntProperty(kOfxParamHostPropSupportsStringAnimation, 0);
        _properties.setIntProperty(kOfxParamHostPropSupportsChoiceAnimation, 0);
        _properties.setIntProperty(kOfxParamHostPropSupportsBooleanAnimation, 0);
        _properties.setIntProperty(kOfxParamHostPropSupportsCustomAnimation, 0);
        _properties.setIntProperty(kOfxParamHostPropMaxParameters, -1);
        _properties.setIntProperty(kOfxParamHostPropMaxPages, 0);
        _properties.setIntProperty(kOfxParamHostPropPageRowColumnCount, 0, 0);
        _properties.setIntProperty(kOfxParamHostPropPageRowColumnCount, 0, 1);
    }

    IE::Instance *newInstance(void *, IE::ImageEffectPlugin *plugin, IE::Descriptor &descriptor,
                              const std::string &context) override {
        return new TestEffect(plugin, descriptor, context);
    }
    IE::Descriptor *makeDescriptor(IE::ImageEffectPlugin *plugin) override { return new IE::Descriptor(plugin); }
    IE::Descriptor *makeDescriptor(const IE::Descriptor &root, IE::ImageEffectPlugin *plugin) override {
        return new IE::Descriptor(root, plugin);
    }
    IE::Descriptor *makeDescriptor(const std::string &bundlePath, IE::ImageEffectPlugin *plugin) override {
        return new IE::Descriptor(bundlePath, plugin);
    }
    OfxStatus vmessage(const char *type, const char *, const char *format, va_list args) override {
        char text[4096];
        vsnprintf(text, sizeof text, format, args);
        std::cout << "message " << type << ": " << text << std::endl;
        return kOfxStatOK;
    }
    OfxStatus setPersistentMessage(const char *type, const char *id, const char *format, va_list args) override {
        return vmessage(type, id, format, args);
    }
    OfxStatus clearPersistentMessage() override { return kOfxStatOK; }
    const void *fetchSuite(const char *name, int version) override {
        if (v1Messages && std::strcmp(name, kOfxMessageSuite) == 0 && version != 1) return nullptr;
        return IE::Host::fetchSuite(name, version);
    }
#ifdef OFX_SUPPORTS_OPENGLRENDER
    OfxStatus flushOpenGLResources() const override { return kOfxStatFailed; }
#endif
};

std::string joinStrings(const HS::Property::Set &props, const char *name) {
    std::string joined;
    int count = props.getDimension(name);
    for (int i = 0; i < count; ++i) joined += (i ? "," : "") + props.getStringProperty(name, i);
    return joined;
}

int checkBinary(const std::string &path) {
    void *handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        std::cout << "FAIL: dlopen(RTLD_NOW | RTLD_LOCAL) of " << path << ": " << dlerror() << std::endl;
        return 2;
    }
    typedef int (*CountFunction)();
    typedef OfxPlugin *(*GetFunction)(int);
    CountFunction count = reinterpret_cast<CountFunction>(dlsym(handle, "OfxGetNumberOfPlugins"));
    GetFunction get = reinterpret_cast<GetFunction>(dlsym(handle, "OfxGetPlugin"));
    if (!count || !get) {
        std::cout << "FAIL: " << path << " lacks OfxGetNumberOfPlugins or OfxGetPlugin" << std::endl;
        return 2;
    }
    int plugins = count();
    std::cout << "dlopen ok, plugins " << plugins << std::endl;
    for (int i = 0; i < plugins; ++i) {
        OfxPlugin *plugin = get(i);
        std::cout << "entry " << i << " " << (plugin ? plugin->pluginIdentifier : "NULL") << " api "
                  << (plugin ? plugin->pluginApi : "NULL") << " " << (plugin ? plugin->apiVersion : -1) << std::endl;
    }
    std::cout << "out of range entry is " << (get(plugins) ? "not NULL" : "NULL") << std::endl;
    return dlclose(handle) == 0 ? 0 : 2;
}

void listPlugins(IE::PluginCache &cache) {
    for (IE::ImageEffectPlugin *plugin : cache.getPlugins()) {
        std::cout << "plugin " << plugin->getIdentifier() << " version " << plugin->getVersionMajor() << "."
                  << plugin->getVersionMinor() << std::endl;
        std::cout << "  file " << plugin->getBinary()->getFilePath() << std::endl;
        const HS::Property::Set &props = plugin->getDescriptor().getProps();
        std::cout << "  label " << props.getStringProperty(kOfxPropLabel) << std::endl;
        std::cout << "  contexts " << joinStrings(props, kOfxImageEffectPropSupportedContexts) << std::endl;
        std::cout << "  depths " << joinStrings(props, kOfxImageEffectPropSupportedPixelDepths) << std::endl;
        std::cout << "  thread-safety " << props.getStringProperty(kOfxImageEffectPluginRenderThreadSafety)
                  << " host-frame-threading " << props.getIntProperty(kOfxImageEffectPluginPropHostFrameThreading)
                  << std::endl;
        std::cout << "  multi-resolution " << props.getIntProperty(kOfxImageEffectPropSupportsMultiResolution)
                  << " tiles " << props.getIntProperty(kOfxImageEffectPropSupportsTiles) << std::endl;
        for (const std::string &context : plugin->getContexts()) {
            IE::Descriptor *descriptor = plugin->getContext(context);
            if (!descriptor) {
                std::cout << "FAIL: describe in context " << context << " failed" << std::endl;
                continue;
            }
            std::cout << "  context " << context << std::endl;
            for (IE::ClipDescriptor *clip : descriptor->getClipsByOrder()) {
                std::cout << "    clip " << clip->getName() << (clip->isOptional() ? " optional" : " mandatory")
                          << " components " << joinStrings(clip->getProps(), kOfxImageEffectPropSupportedComponents)
                          << std::endl;
            }
            for (HS::Param::Descriptor *param : descriptor->getParamList()) {
                const HS::Property::Set &p = param->getProperties();
                std::cout << "    param " << param->getName() << " " << param->getType() << " animates "
                          << p.getIntProperty(kOfxParamPropAnimates) << std::endl;
            }
        }
    }
}

void setParam(TestEffect &effect, const std::string &assignment, bool keys) {
    size_t equals = assignment.find('=');
    if (equals == std::string::npos) throw UsageError("parameter setting '" + assignment + "' is not NAME=VALUE");
    std::string name = assignment.substr(0, equals), value = assignment.substr(equals + 1);
    HS::Param::Instance *param = effect.getParam(name);
    if (!param) throw UsageError("the plug-in has no parameter '" + name + "'");
    if (keys) {
        TestInteger *integer = dynamic_cast<TestInteger *>(param);
        TestDouble *real = dynamic_cast<TestDouble *>(param);
        if (!integer && !real)
            throw UsageError("--key needs an integer or double parameter, and '" + name + "' is neither");
        for (const std::string &key : split(value, ',')) {
            std::vector<std::string> pair = split(key, ':');
            if (pair.size() != 2) throw UsageError("key '" + key + "' is not TIME:VALUE");
            double time = toNumber(pair[0], name), number = toNumber(pair[1], name);
            if (integer) integer->set(time, int(number));
            else real->set(time, number);
        }
        return;
    }
    if (auto *p = dynamic_cast<TestInteger *>(param)) p->set(int(toNumber(value, name)));
    else if (auto *p = dynamic_cast<TestDouble *>(param)) p->set(toNumber(value, name));
    else if (auto *p = dynamic_cast<TestBoolean *>(param)) p->set(toNumber(value, name) != 0);
    else if (auto *p = dynamic_cast<TestChoice *>(param)) p->set(int(toNumber(value, name)));
    else if (auto *p = dynamic_cast<TestString *>(param)) p->set(value.c_str());
    else throw UsageError("parameter '" + name + "' has type " + param->getType() + ", which --param cannot set");
}

bool supportedDepth(IE::ImageEffectPlugin &plugin, const std::string &depth) {
    const HS::Property::Set &props = plugin.getDescriptor().getProps();
    for (int i = 0; i < props.getDimension(kOfxImageEffectPropSupportedPixelDepths); ++i) {
        if (props.getStringProperty(kOfxImageEffectPropSupportedPixelDepths, i) == depth) return true;
    }
    return false;
}

// Writes the window of the image, top row first, after a "W H CHANNELS BYTES" line.
void writeWindow(TestImage &image, const OfxRectI &window, const RenderSpec &render) {
    std::ofstream file(render.out.c_str(), std::ios::binary);
    file << (window.x2 - window.x1) << " " << (window.y2 - window.y1) << " " << componentCount(render.components)
         << " " << bytesPerSample(render.depth) << "\n";
    for (int y = window.y2 - 1; y >= window.y1; --y) {
        file.write(reinterpret_cast<const char *>(image.pixel(window.x1, y)),
                   std::streamsize(size_t(window.x2 - window.x1) * image.pixelBytes()));
    }
    if (!file) throw UsageError("cannot write " + render.out);
}

// Runs the render actions of one SPEC; returns false when the plug-in failed one.
bool renderOnce(IE::ImageEffectPlugin &plugin, TestEffect &effect, const RenderSpec &render) {
    effect.render = render;
    if (!effect.getClipPreferences()) {
        std::cout << "FAIL: get clip preferences" << std::endl;
        return false;
    }
    // Like a compositor with a project depth, the host requests the depth and components of the
    // spec, provided the plug-in declared them.
    TestClip *output = dynamic_cast<TestClip *>(effect.getClip(kOfxImageEffectOutputClipName));
    if (!supportedDepth(plugin, render.depth) || !output->isSupportedComponent(render.components)) {
        std::cout << "FAIL: the plug-in does not declare " << render.depth << " " << render.components << std::endl;
        return false;
    }
    output->setPixelDepth(render.depth);
    output->setComponents(render.components);
    std::cout << "clip-preferences premultiplication " << effect.getOutputPreMultiplication() << " frame-varying "
              << effect.isFrameVarying() << std::endl;

    OfxPointD scale = {render.scale, render.scale};
    OfxRectD rod;
    OfxStatus status = effect.getRegionOfDefinitionAction(render.time, scale, rod);
    if (status != kOfxStatOK && status != kOfxStatReplyDefault) {
        std::cout << "FAIL: region of definition, status " << status << std::endl;
        return false;
    }
    effect.outputRod = rod;
    effect.outputBounds = {int(std::floor(rod.x1 * render.scale)), int(std::floor(rod.y1 * render.scale)),
                           int(std::ceil(rod.x2 * render.scale)), int(std::ceil(rod.y2 * render.scale))};
    OfxRectI window = render.fullWindow ? effect.outputBounds : render.window;
    std::cout << "rod " << rod.x1 << " " << rod.y1 << " " << rod.x2 << " " << rod.y2 << std::endl;

    status = effect.beginRenderAction(render.time, render.time, 1, false, scale, true, false);
    if (status != kOfxStatOK && status != kOfxStatReplyDefault) {
        std::cout << "FAIL: begin render, status " << status << std::endl;
        return false;
    }
    OfxRectD roi = {window.x1 / render.scale, window.y1 / render.scale, window.x2 / render.scale,
                    window.y2 / render.scale};
    std::map<IE::ClipInstance *, OfxRectD> rois;
    status = effect.getRegionOfInterestAction(render.time, scale, roi, rois);
    for (const auto &entry : rois) {
        std::cout << "roi " << entry.first->getName() << " " << entry.second.x1 << " " << entry.second.y1 << " "
                  << entry.second.x2 << " " << entry.second.y2 << std::endl;
    }

    output->dropOutput();
    auto start = std::chrono::steady_clock::now();
    status = effect.renderAction(render.time, kOfxImageFieldNone, window, scale, true, false, false);
    double milliseconds =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    effect.endRenderAction(render.time, render.time, 1, false, scale, true, false);

    TestImage *image = output->output();
    long rowBytes = image ? image->getIntProperty(kOfxImagePropRowBytes) : 0;
    std::cout << "render time " << render.time << " scale " << render.scale << " status " << status << " window "
              << window.x1 << " " << window.y1 << " " << window.x2 << " " << window.y2 << " row-bytes " << rowBytes
              << " ms " << milliseconds << " abort-polls " << effect.abortCalls << std::endl;
    if (status != kOfxStatOK) {
        std::cout << "FAIL: render, status " << status << std::endl;
        return false;
    }
    if (!image) {
        // A plug-in may return early without writing when the host asked it to abort.
        bool aborted = effect.abortAfter >= 0 && effect.abortCalls > effect.abortAfter;
        std::cout << "written inside 0 outside 0 source-fetches " << output->sourceFetches()
                  << " (no output image fetched)" << std::endl;
        if (!aborted) std::cout << "FAIL: the plug-in never fetched the output image" << std::endl;
        return aborted;
    }
    std::cout << "written inside " << image->writtenPixels(window, true) << " outside "
              << image->writtenPixels(window, false) << " source-fetches " << output->sourceFetches() << std::endl;
    if (!render.out.empty()) writeWindow(*image, window, render);
    return true;
}

int runPlugin(IE::PluginCache &cache, const std::vector<std::string> &args, TestHost &host) {
    std::string id, context;
    std::vector<std::string> params, keys, renders;
    long abortAfter = -1;
    bool sourceConnected = false;
    OfxRectD sourceRod = {0, 0, 0, 0};
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string &arg = args[i];
        bool hasValue = i + 1 < args.size();
        if (arg == "--v1-messages") host.v1Messages = true;
        else if (!hasValue) throw UsageError("option " + arg + " needs a value");
        else if (arg == "--plugin") id = args[++i];
        else if (arg == "--context") context = args[++i];
        else if (arg == "--param") params.push_back(args[++i]);
        else if (arg == "--key") keys.push_back(args[++i]);
        else if (arg == "--render") renders.push_back(args[++i]);
        else if (arg == "--abort-after") abortAfter = long(toNumber(args[++i], arg));
        else if (arg == "--source") {
            std::vector<std::string> size = split(args[++i], 'x');
            if (size.size() != 2) throw UsageError("--source needs WxH");
            sourceRod = {0, 0, toNumber(size[0], arg), toNumber(size[1], arg)};
            sourceConnected = true;
        } else throw UsageError("unknown option " + arg);
    }
    if (id.empty() || context.empty() || renders.empty())
        throw UsageError("run needs --plugin, --context and at least one --render");

    IE::ImageEffectPlugin *plugin = cache.getPluginById(id);
    if (!plugin) {
        std::cout << "FAIL: no plug-in " << id << " under OFX_PLUGIN_PATH" << std::endl;
        return 1;
    }
    std::unique_ptr<IE::Instance> instance(plugin->createInstance("OfxImageEffectContext" + context, nullptr));
    TestEffect *effect = dynamic_cast<TestEffect *>(instance.get());
    if (!effect) {
        std::cout << "FAIL: cannot create " << id << " in context " << context << std::endl;
        return 2;
    }
    effect->sourceConnected = sourceConnected;
    effect->sourceRod = sourceRod;
    effect->abortAfter = abortAfter;
    for (const std::string &param : params) setParam(*effect, param, false);
    for (const std::string &key : keys) setParam(*effect, key, true);

    OfxStatus status = effect->createInstanceAction();
    if (status != kOfxStatOK && status != kOfxStatReplyDefault) {
        std::cout << "FAIL: create instance, status " << status << std::endl;
        return 2;
    }
    std::cout << "created " << id << " in " << context << std::endl;

    bool ok = true;
    for (const std::string &spec : renders) ok = renderOnce(*plugin, *effect, parseRender(spec)) && ok;
    instance.reset();
    std::cout << "destroyed" << std::endl;
    return ok ? 0 : 2;
}

}  // namespace

int main(int argc, char **argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty()) {
        std::cerr << "usage: ofx_test_host check-binary FILE | list | run --plugin ID --context CONTEXT ..."
                  << std::endl;
        return 1;
    }
    try {
        if (args[0] == "check-binary" && args.size() == 2) return checkBinary(args[1]);

        // No plug-in cache file is read or written: every run loads and describes the binaries.
        HS::PluginCache::getPluginCache()->setCacheVersion("peganOfxTestHost1");
        TestHost host;
        IE::PluginCache cache(host);
        cache.registerInCache(*HS::PluginCache::getPluginCache());
        HS::PluginCache::getPluginCache()->scanPluginFiles();

        int result = 1;
        if (args[0] == "list") {
            listPlugins(cache);
            result = 0;
        } else if (args[0] == "run") {
            result = runPlugin(cache, std::vector<std::string>(args.begin() + 1, args.end()), host);
        } else {
            throw UsageError("unknown command " + args[0]);
        }

        // Unloads every plug-in (the unload action) and closes the binaries (dlclose).
        HS::PluginCache::clearPluginCache();
        std::cout << "unloaded" << std::endl;
        return result;
    } catch (const UsageError &error) {
        std::cout << "usage error: " << error.what() << std::endl;
        return 1;
    } catch (const std::exception &error) {
        std::cout << "FAIL: exception " << error.what() << std::endl;
        return 2;
    }
}
